"""The canvas service: users upload images (Supabase users, their metadata in the project's Postgres, the bytes in
S3) and run GPU tasks on them through the orchestrator. Layout and choices: canvas/README.md."""
