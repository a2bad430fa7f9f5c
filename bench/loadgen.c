// SPDX-License-Identifier: GPL-2.0
/*
 * loadgen: the workloads the netsnoop benchmarks trace, on loopback only.
 *
 *   loadgen storm [-n COUNT] [-c CONCURRENCY] [-p PORT] [-6]
 *       COUNT TCP connections to a listener of our own: every client thread
 *       connects and closes with an RST (SO_LINGER 0, so no TIME_WAIT eats the
 *       ephemeral ports); every server thread accepts and closes.
 *   loadgen bulk [-b BYTES | -t SECONDS] [-s CHUNK] [-c CONCURRENCY] [-p PORT] [-6]
 *       CONCURRENCY connections, each carrying BYTES (or as much as SECONDS allow)
 *       from client to server in write()s and read()s of CHUNK bytes (many socket
 *       calls per second).
 *
 * The listener is on PORT (default: one the kernel picks), so a tracer can be told
 * to watch only this traffic.
 *
 * Prints one JSON object on stdout when done: what was run, the listener's port
 * (so a harness can pick its own rows out of a trace), wall seconds and the rate.
 * Written in C so that the workload, not an interpreter, is what runs flat out.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64

struct config {
	const char *mode;
	long count;          /* storm: connections */
	long bytes;          /* bulk: bytes per connection */
	long chunk;          /* bulk: bytes per write()/read() */
	double seconds;      /* bulk: transfer for this long instead of .bytes */
	int concurrency;     /* client threads (and as many server threads) */
	int port;
	int family;
};

static struct config cfg = { .count = 20000, .bytes = 256L << 20, .chunk = 1024, .concurrency = 1, .family = AF_INET };
static atomic_long transferred;
static struct sockaddr_storage server_addr;
static socklen_t server_len;
static int listen_fd;
static atomic_long accepted;
static atomic_long failures;

static void die(const char *what)
{
	fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A listener on the loopback address of the chosen family, on a port the kernel picks. */
static int make_listener(void)
{
	struct sockaddr_in *a4 = (struct sockaddr_in *)&server_addr;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&server_addr;
	int fd = socket(cfg.family, SOCK_STREAM, 0), one = 1;

	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&server_addr, 0, sizeof(server_addr));
	if (cfg.family == AF_INET6) {
		a6->sin6_family = AF_INET6;
		a6->sin6_addr = in6addr_loopback;
		a6->sin6_port = htons(cfg.port);
		server_len = sizeof(*a6);
	} else {
		a4->sin_family = AF_INET;
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a4->sin_port = htons(cfg.port);
		server_len = sizeof(*a4);
	}
	if (bind(fd, (struct sockaddr *)&server_addr, server_len) < 0)
		die("bind");
	if (listen(fd, 4096) < 0)
		die("listen");
	if (getsockname(fd, (struct sockaddr *)&server_addr, &server_len) < 0)
		die("getsockname");
	return fd;
}

static int port(void)
{
	if (cfg.family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&server_addr)->sin6_port);
	return ntohs(((struct sockaddr_in *)&server_addr)->sin_port);
}

static int dial(void)
{
	int fd = socket(cfg.family, SOCK_STREAM, 0);

	if (fd < 0)
		die("socket");
	while (connect(fd, (struct sockaddr *)&server_addr, server_len) < 0) {
		if (errno != EINTR && errno != EAGAIN && errno != EADDRNOTAVAIL) {
			atomic_fetch_add(&failures, 1);
			close(fd);
			return -1;
		}
	}
	return fd;
}

/* storm ----------------------------------------------------------------------------- */

static void *storm_client(void *arg)
{
	long n = (long)arg;
	struct linger rst = { .l_onoff = 1, .l_linger = 0 };

	for (long i = 0; i < n; i++) {
		int fd = dial();

		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
		close(fd);
	}
	return NULL;
}

static void *storm_server(void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept(listen_fd, NULL, NULL);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return NULL; /* the listener was shut down: the storm is over */
		}
		close(fd);
		atomic_fetch_add(&accepted, 1);
	}
}

/* bulk ------------------------------------------------------------------------------ */

static void *bulk_client(void *arg)
{
	char *buf = calloc(1, cfg.chunk);
	double deadline = now() + cfg.seconds;
	long sent = 0;
	int fd = dial();

	(void)arg;
	if (fd < 0 || !buf)
		return NULL;
	for (long calls = 0; cfg.seconds ? 1 : sent < cfg.bytes; calls++) {
		long want = cfg.seconds ? cfg.chunk : (cfg.bytes - sent < cfg.chunk ? cfg.bytes - sent : cfg.chunk);
		ssize_t n;

		if (cfg.seconds && (calls & 255) == 0 && now() >= deadline)
			break;
		n = write(fd, buf, want);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			atomic_fetch_add(&failures, 1);
			break;
		}
		sent += n;
	}
	atomic_fetch_add(&transferred, sent);
	close(fd);
	free(buf);
	return NULL;
}

static void *bulk_server(void *arg)
{
	char *buf = malloc(cfg.chunk);
	int fd;

	(void)arg;
	fd = accept(listen_fd, NULL, NULL);
	if (fd < 0 || !buf)
		return NULL;
	while (read(fd, buf, cfg.chunk) > 0)
		;
	close(fd);
	free(buf);
	atomic_fetch_add(&accepted, 1);
	return NULL;
}

/* main ------------------------------------------------------------------------------ */

static void usage(void)
{
	fprintf(stderr, "usage: loadgen storm [-n COUNT] [-c CONCURRENCY] [-p PORT] [-6]\n"
			"       loadgen bulk [-b BYTES | -t SECONDS] [-s CHUNK] [-c CONCURRENCY] [-p PORT] [-6]\n");
	exit(2);
}

static long positive(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*end || v <= 0)
		usage();
	return v;
}

static void parse(int argc, char **argv)
{
	int opt;

	if (argc < 2 || (strcmp(argv[1], "storm") && strcmp(argv[1], "bulk")))
		usage();
	cfg.mode = argv[1];
	optind = 2;
	while ((opt = getopt(argc, argv, "n:c:b:s:t:p:6")) != -1) {
		switch (opt) {
		case 't':
			cfg.seconds = strtod(optarg, NULL);
			if (cfg.seconds <= 0)
				usage();
			break;
		case 'p':
			cfg.port = positive(optarg);
			if (cfg.port > 65535)
				usage();
			break;
		case 'n': cfg.count = positive(optarg); break;
		case 'c': cfg.concurrency = positive(optarg); break;
		case 'b': cfg.bytes = positive(optarg); break;
		case 's': cfg.chunk = positive(optarg); break;
		case '6': cfg.family = AF_INET6; break;
		default: usage();
		}
	}
	if (cfg.concurrency > MAX_THREADS)
		usage();
}

int main(int argc, char **argv)
{
	pthread_t servers[MAX_THREADS], clients[MAX_THREADS];
	int storm, c;
	double start, seconds;

	parse(argc, argv);
	storm = !strcmp(cfg.mode, "storm");
	c = cfg.concurrency;
	listen_fd = make_listener();
	for (int i = 0; i < c; i++)
		pthread_create(&servers[i], NULL, storm ? storm_server : bulk_server, NULL);

	start = now();
	for (int i = 0; i < c; i++) {
		long share = cfg.count / c + (i < cfg.count % c);

		pthread_create(&clients[i], NULL, storm ? storm_client : bulk_client, (void *)share);
	}
	for (int i = 0; i < c; i++)
		pthread_join(clients[i], NULL);
	if (storm) {
		/* every connection the clients made must have been accepted before we stop */
		while (atomic_load(&accepted) + atomic_load(&failures) < cfg.count)
			usleep(100);
		shutdown(listen_fd, SHUT_RDWR);
	}
	for (int i = 0; i < c; i++)
		pthread_join(servers[i], NULL);
	seconds = now() - start;
	close(listen_fd);

	if (storm)
		printf("{\"mode\":\"storm\",\"connections\":%ld,\"concurrency\":%d,\"port\":%d,\"failures\":%ld,"
		       "\"seconds\":%.6f,\"rate\":%.1f,\"unit\":\"conn/s\"}\n",
		       cfg.count, c, port(), atomic_load(&failures), seconds, (cfg.count - atomic_load(&failures)) / seconds);
	else
		printf("{\"mode\":\"bulk\",\"connections\":%d,\"bytes\":%ld,\"chunk\":%ld,\"port\":%d,\"failures\":%ld,"
		       "\"seconds\":%.6f,\"rate\":%.1f,\"unit\":\"MB/s\"}\n",
		       c, atomic_load(&transferred), cfg.chunk, port(), atomic_load(&failures), seconds,
		       atomic_load(&transferred) / seconds / 1e6);
	return atomic_load(&failures) ? 1 : 0;
}
