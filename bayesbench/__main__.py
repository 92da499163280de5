from bayesbench.cli import main

main()
