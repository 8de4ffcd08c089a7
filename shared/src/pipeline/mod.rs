//! The work between the functions: accepting an event and fanning it out ([`ingest`]),
//! attempting its deliveries ([`dispatch`]), where a retry waits ([`waits`]), where a
//! delivery held at an open circuit or a disabled endpoint waits ([`backlog`]), the hosts
//! that are not answering ([`hosts`]), replays
//! ([`replay`]), a venue's removal ([`removal`]), and what the platform hears
//! ([`operational`]). The top room: nothing else imports it.

pub mod backlog;
pub mod dispatch;
pub mod hosts;
pub mod ingest;
pub mod operational;
pub mod removal;
pub mod replay;
pub mod waits;
