from skinflow.entry import main

main()
