"""Order-flow analytics over columns: bars now; OBI, CVD and the L2 book build on them."""
