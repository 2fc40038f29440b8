"""numaplan.osnuma."""
