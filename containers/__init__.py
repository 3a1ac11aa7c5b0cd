"""Docker build contexts of envgym's containers, shipped with the package (`envgym.containers`)."""
