"""One module per group of commands; ``cli.main`` registers them."""
