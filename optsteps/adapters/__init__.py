"""Thin adapters from the library to orchestration engines (Ray). The math modules never import these."""
