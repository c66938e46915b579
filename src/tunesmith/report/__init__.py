"""Reports: the run summary (JSON, Markdown, console) and the tables every verb prints."""
