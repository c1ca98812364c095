"""The pure alert engine: levels, hysteresis, repeats, mutes, staleness; the time is an argument."""
