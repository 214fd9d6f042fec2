"""vidmesh command line: `vidmesh up`, each service on its own, schema generation."""
