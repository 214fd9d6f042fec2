"""The native `/api/` face, shaped after the Odeion media server's routes."""
