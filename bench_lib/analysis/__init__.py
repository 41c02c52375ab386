"""Reports and comparisons of CSV reports. No torch."""
