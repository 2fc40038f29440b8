"""numaplan.model."""
