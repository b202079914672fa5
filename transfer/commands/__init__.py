"""One module per verb of the command line, each a short sequence of named steps
over the library: finetune, evaluate, predict, embed, probe, export, info, weights."""
