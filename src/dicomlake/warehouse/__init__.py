"""Tables: BigQuery datasets and tables in the embedded DuckDB warehouse, their schemas and evolution, and the
BigQuery Standard SQL query endpoint over them."""
