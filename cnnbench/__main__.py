from cnnbench.train import main

main()
