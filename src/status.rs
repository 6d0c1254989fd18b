//! Host Status and the servicing state machine (being written).
