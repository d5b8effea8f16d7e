/** The machine page (inventory, labels, keys, sessions, connect): being written. */
export function MachinePage(props: { id: string }) {
  return <p class="state">Machine {props.id}</p>;
}
