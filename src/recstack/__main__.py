from recstack.cli import main

main()
