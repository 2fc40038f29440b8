"""numaplan.cli."""
