"""What is computed from run records and how it is presented: analysis, rendering, diagnostic reports and ``traintel doctor``'s checks."""
