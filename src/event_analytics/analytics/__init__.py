"""Product analytics over the archive on DuckDB: funnels, retention, breakdowns."""
