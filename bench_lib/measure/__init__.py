"""How a group of cases is measured in a worker process: timing, memory, devices, telemetry, the environment."""
