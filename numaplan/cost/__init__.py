"""numaplan.cost."""
