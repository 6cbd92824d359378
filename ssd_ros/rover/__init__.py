"""Rover: the Adeept PiCar-B base driver and its hardware ports.

The only code that touches I2C/GPIO (PCA9685, motor pins), each behind a small port with a faithful simulated
chip. May import ``control`` (the Ackermann geometry) and ``settings``.
"""
