from hedonic_neurons.cli import main

main()
