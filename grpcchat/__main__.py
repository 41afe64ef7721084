from grpcchat.cli import main

main()
