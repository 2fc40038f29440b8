"""numaplan.passes."""
