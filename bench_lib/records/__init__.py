"""What a measurement is: case identity, raw samples and statistics, results, the report format. No torch."""
