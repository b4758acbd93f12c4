from cnnbench.bench import main

main()
