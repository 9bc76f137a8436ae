//! TopoLoss.
