//! The Convene command-line client (`convene`): stream, receive, load and token.
