from netsnoop.process import install

install()  # before the imports below: a Ctrl-C from here on stops netsnoop cleanly

from netsnoop.cli import main  # noqa: E402

main()
