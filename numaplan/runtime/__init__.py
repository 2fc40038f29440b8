"""numaplan.runtime."""
