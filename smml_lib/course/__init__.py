"""course: running and reporting the labs (start_lab, the headless runner, the report, doctor)."""
