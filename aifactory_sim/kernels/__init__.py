"""Pure numpy physics: functions over arrays of configurations, no SimPy, no RNG, no I/O."""
