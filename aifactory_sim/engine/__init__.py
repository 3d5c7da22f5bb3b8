"""SimPy components: the factory in time. `factory.Factory(scenario).run()` plays a scenario out
and hands back each component's result; `aifactory_sim.runner` turns them into `Results`."""
