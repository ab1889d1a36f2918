//! librdkafka errors mapped onto the processor's three error classes.

use autoglm_core::ErrorClass;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The class of a librdkafka error: whether to retry, dead-letter the record, or stop.
///
/// Transaction errors carry librdkafka's own verdict: fatal errors (fenced, unrecoverable producer
/// state) stop the processor; errors that require an abort, or are retriable, are transient: the
/// runtime aborts, rewinds to the committed offsets and tries again.
pub fn classify(error: &KafkaError) -> ErrorClass {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => ErrorClass::Fatal,
        KafkaError::Transaction(_) => ErrorClass::Transient,
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Subscription(_) => ErrorClass::Fatal,
        KafkaError::MessageConsumptionFatal(_) => ErrorClass::Fatal,
        other => other
            .rdkafka_error_code()
            .map_or(ErrorClass::Transient, class_of_code),
    }
}

/// Whether `code` says this producer was fenced: another instance took over its transactional
/// id, or the broker ended its open transaction (a stall past `transaction.timeout.ms`, such as
/// a paused process, ends as either).
pub fn is_fencing(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch | C::InvalidTransactionalState
    )
}

fn class_of_code(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        // This record can never be written as it is.
        C::MessageSizeTooLarge | C::InvalidRecord | C::InvalidMessage => ErrorClass::Poison,
        // Another instance took over, or the credentials are wrong: stop, do not retry.
        code if is_fencing(code) => ErrorClass::Fatal,
        C::TransactionalIdAuthorizationFailed
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnsupportedForMessageFormat
        | C::UnsupportedVersion
        | C::InvalidConfig
        | C::Fatal => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_and_authorization_stop_the_processor() {
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                ErrorClass::Fatal,
                "{code:?}"
            );
        }
    }

    #[test]
    fn oversized_record_is_poison() {
        let err = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(classify(&err), ErrorClass::Poison);
    }

    #[test]
    fn broker_outages_are_retried() {
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert_eq!(
                classify(&KafkaError::MessageProduction(code)),
                ErrorClass::Transient,
                "{code:?}"
            );
        }
    }

    #[test]
    fn bad_client_configuration_is_fatal() {
        let err = KafkaError::ClientCreation("bad".to_owned());
        assert_eq!(classify(&err), ErrorClass::Fatal);
    }
}
