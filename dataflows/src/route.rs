//! Sending records to chosen workers: each record is copied to every
//! target worker and exchanged to it, keeping its timestamp.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Exchange, Operator};
use timely::dataflow::Stream;

/// Delivers every record of `stream` to each worker in `targets`.
pub fn send_to<'s, D>(
    stream: Stream<'s, u64, Vec<D>>,
    name: &str,
    targets: Vec<usize>,
) -> Stream<'s, u64, Vec<D>>
where
    D: timely::ExchangeData + Clone,
{
    stream
        .unary::<CapacityContainerBuilder<Vec<(usize, D)>>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for item in data.drain(..) {
                        for target in &targets {
                            session.give((*target, item.clone()));
                        }
                    }
                });
            }
        })
        .exchange(|(target, _)| *target as u64)
        .unary(Pipeline, "Untag", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    output
                        .session(&cap)
                        .give_iterator(data.drain(..).map(|(_, item)| item));
                });
            }
        })
}
