"""Console scripts: thin entry points (parse, build, call); the work lives in the library modules."""
