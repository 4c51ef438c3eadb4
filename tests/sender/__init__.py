"""The sender: ContextClient, the command line and the TypeScript client."""
