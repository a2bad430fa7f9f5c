from netsnoop.cli import main

main()
