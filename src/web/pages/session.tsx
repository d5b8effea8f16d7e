/** The session page (terminals, files, commands, chat, people): being written. */
export function SessionPage(props: { id: string }) {
  return <p class="state">Session {props.id}</p>;
}
