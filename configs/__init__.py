"""ml_collections experiment configs: ``base.get_config()`` plus one override per experiment."""
