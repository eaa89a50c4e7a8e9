//! Pool element.
