"""``freight loadtest``: simulated clients from a scenario sheet."""
