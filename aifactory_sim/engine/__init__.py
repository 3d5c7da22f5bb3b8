"""SimPy processes: the factory in time. `factory.run(scenario)` plays a scenario out."""
