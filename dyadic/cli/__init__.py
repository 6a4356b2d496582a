"""The `dyadic` command line (`main`) and its commands' modules: `bench`, `sweep`, `evaluate`, `report`."""
