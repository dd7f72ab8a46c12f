from skinflow.cli import main

main()
