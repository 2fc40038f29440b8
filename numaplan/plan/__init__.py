"""numaplan.plan."""
