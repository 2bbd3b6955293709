//! The engine's pull policy: held swappable, checked first by every request.

use super::PullThrough;
use crate::policy::SharedPolicy;
use crate::reference::{ManifestRef, Registry, Repository};
use crate::Result;

impl<S: ?Sized, U: ?Sized> PullThrough<S, U> {
    /// The pull policy every request is checked against first (allow-all
    /// until [`SharedPolicy::replace`]d); swappable while serving.
    pub fn policy(&self) -> &SharedPolicy {
        &self.inner.policy
    }

    /// `Ok` when the policy in force allows the request; checked before
    /// storage or upstream is asked anything.
    pub(super) fn allowed(
        &self,
        registry: &Registry,
        repository: &Repository,
        reference: Option<&ManifestRef>,
    ) -> Result<()> {
        self.inner
            .policy
            .current()
            .check(registry, repository, reference)
    }
}
