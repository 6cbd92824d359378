"""Hardware ports: the only code touching I2C/GPIO, each with a faithful simulated device."""
