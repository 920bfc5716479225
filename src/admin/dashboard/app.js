// Placeholder until the dashboard lands.
